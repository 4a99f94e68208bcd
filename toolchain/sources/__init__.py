"""Loading source models named by a recipe (one module per framework)."""
