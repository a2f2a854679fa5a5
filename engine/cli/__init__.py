"""The command line: `kvdeck inspect|plan|fit|pair|bench|precision|chat|serve`, one module
per command group.
"""
