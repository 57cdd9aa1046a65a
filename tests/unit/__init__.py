"""Tests of one exporter module each: tests/unit/test_<module>.py."""
