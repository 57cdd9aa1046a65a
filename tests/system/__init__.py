"""Fleet-backed tests: the exporter polling a simulated fleet over real WinRM, as a whole."""
