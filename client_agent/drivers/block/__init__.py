"""Block-device drivers (Linux ``drivers/block/``): each a sans-I/O core behind the storage interface."""
