"""The ``kvdeck`` executable's entry point (`kvdeck.launcher`), above both `app` and `engine`.

It is the one place that chooses between the window (`app`), the command line (`engine.cli`)
and, in a frozen bundle, the runtime child (`engine.child`), so the window itself never
imports the CLI or the child.
"""
