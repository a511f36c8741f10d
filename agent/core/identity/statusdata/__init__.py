"""status-go's MPL-2.0 word and emoji lists, shipped unmodified as separate data files (see NOTICE.txt).

This ``__init__`` is keyagent's own; it only makes the folder a package so the ``*.txt`` files are installed.
"""
