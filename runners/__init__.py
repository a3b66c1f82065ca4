"""kdbench.runners"""
