"""The simulator's own tests: its WinRM protocol side and its Windows + EEMS side."""
