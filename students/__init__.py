"""kdbench.students"""
