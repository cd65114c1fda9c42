"""Example out-of-package smitunet trainers (used by the plug-in tests)."""
