"""quartet.passes.welder"""
