"""rlpost.objectives"""
