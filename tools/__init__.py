"""quartet.tools"""
