"""The sweep and run folders on disk: file names, their readers and writers, and run-folder naming."""
