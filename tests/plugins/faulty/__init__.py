"""Plugins that are each wrong in one way (see README.md); ``--plugin faulty.<module>`` loads one."""
