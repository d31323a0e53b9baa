"""HTTP views served by Faust's web server; found by autodiscovery."""
