"""quartet.passes.roller"""
