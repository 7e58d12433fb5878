"""rlpost.data"""
