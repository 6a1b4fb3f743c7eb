"""The only package that imports Ray: the driver's dispatch loop and the scoring actor."""
