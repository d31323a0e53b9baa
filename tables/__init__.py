"""Table definitions and the plain logic of the state kept in them."""
