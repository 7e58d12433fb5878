"""rlpost.ops"""
