"""The HTTP contract of each route family: its fields (documented for OpenAPI, checked by our own
parsers, one message in words per malformed field) and its response."""
