"""quartet.dialects"""
