"""quartet.runtime"""
