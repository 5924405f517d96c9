"""A Flower app whose server audits what its clients' updates leak, with gifd (see ../README.md)."""
