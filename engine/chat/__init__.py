"""Conversations with a loaded model: prompt building with the model's own chat template,
rendered in a sandbox.
"""
