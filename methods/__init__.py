"""kdbench.methods"""
