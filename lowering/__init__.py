"""quartet.lowering"""
