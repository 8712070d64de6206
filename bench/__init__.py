"""quartet.bench"""
