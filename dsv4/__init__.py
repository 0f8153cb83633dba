"""dsv4: DeepSeek-V4 end to end in Python."""
