"""exchange-eems-exporter: can each Exchange server still receive emergency mitigations?"""

__version__ = "0.1.0"
