"""One budget's round in a fixed order (read, observe, plan, order, apply, report) and what it keeps between rounds."""
