"""quartet.passes.grinder"""
