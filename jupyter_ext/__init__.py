"""Everything that needs Jupyter: the server extension and notebook widgets (built in a later issue).

The core package `autopm_realtime` never imports from here.
"""
