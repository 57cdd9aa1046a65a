"""A simulated Exchange fleet that answers over real WinRM: for the demo, the tests, and users testing alert routing."""
