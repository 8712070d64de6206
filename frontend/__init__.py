"""quartet.frontend"""
