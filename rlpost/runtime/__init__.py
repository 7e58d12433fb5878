"""rlpost.runtime"""
