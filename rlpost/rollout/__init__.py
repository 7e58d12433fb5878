"""rlpost.rollout"""
