"""Bulk jobs: read a backlog of images once, on Ray Data, with the server's own handler."""
