"""quartet.passes.rammer"""
