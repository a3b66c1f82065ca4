"""kdbench.teachers"""
