"""udfd's own schema of Kapacitor's UDF protocol and the code generated from it."""
