"""kdbench.reports"""
