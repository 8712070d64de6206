"""quartet.passes"""
