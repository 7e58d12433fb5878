"""rlpost.samplers"""
