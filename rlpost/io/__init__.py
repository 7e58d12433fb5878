"""rlpost.io"""
