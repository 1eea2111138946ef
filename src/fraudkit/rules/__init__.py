"""Rules next to the model: the condition language and decisions (language), and live rule sets from a
file or the control topic (live)."""
