"""rlpost.rewards"""
