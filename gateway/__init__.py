"""gateway: the public embedsearch API, mapping source columns to vector columns."""
