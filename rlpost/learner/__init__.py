"""rlpost.learner"""
