namespace Microsoft.ML.Dpo.Tokenization.Jinja;

// The syntax tree of a template. Every node keeps the source position of its first token, for error messages.

abstract record Node(int Pos);

// ---- statements ----
abstract record Stmt(int Pos) : Node(Pos);
sealed record TextStmt(int Pos, string Text) : Stmt(Pos);
sealed record PrintStmt(int Pos, Expr Value) : Stmt(Pos);
sealed record IfStmt(int Pos, List<(Expr Test, List<Stmt> Body)> Branches, List<Stmt>? Else) : Stmt(Pos);
sealed record ForStmt(int Pos, Target Target, Expr Iterable, Expr? Filter, List<Stmt> Body, List<Stmt>? Else) : Stmt(Pos);
sealed record SetStmt(int Pos, Target Target, Expr Value) : Stmt(Pos);
sealed record SetBlockStmt(int Pos, Target Target, List<FilterExpr> Filters, List<Stmt> Body) : Stmt(Pos);
sealed record MacroStmt(int Pos, string Name, List<(string Name, Expr? Default)> Parameters, List<Stmt> Body, bool CatchesVarargs, bool CatchesKwargs) : Stmt(Pos);
sealed record CallBlockStmt(int Pos, List<(string Name, Expr? Default)> CallerParameters, CallExpr Call, List<Stmt> Body) : Stmt(Pos);
sealed record FilterBlockStmt(int Pos, List<FilterExpr> Filters, List<Stmt> Body) : Stmt(Pos);
sealed record GenerationStmt(int Pos, List<Stmt> Body) : Stmt(Pos);
sealed record BreakStmt(int Pos) : Stmt(Pos);
sealed record ContinueStmt(int Pos) : Stmt(Pos);

// ---- assignment targets ----
abstract record Target(int Pos) : Node(Pos);
sealed record NameTarget(int Pos, string Name) : Target(Pos);
sealed record TupleTarget(int Pos, List<Target> Items) : Target(Pos);
sealed record AttrTarget(int Pos, string Name, string Attribute) : Target(Pos);

// ---- expressions ----
abstract record Expr(int Pos) : Node(Pos);
sealed record ConstExpr(int Pos, object? Value) : Expr(Pos);
sealed record NameExpr(int Pos, string Name) : Expr(Pos);
sealed record ListExpr(int Pos, List<Expr> Items) : Expr(Pos);
sealed record TupleExpr(int Pos, List<Expr> Items) : Expr(Pos);
sealed record DictExpr(int Pos, List<(Expr Key, Expr Value)> Items) : Expr(Pos);
sealed record GetAttrExpr(int Pos, Expr Target, string Name) : Expr(Pos);
sealed record GetItemExpr(int Pos, Expr Target, Expr Index) : Expr(Pos);
sealed record SliceExpr(int Pos, Expr Target, Expr? Start, Expr? Stop, Expr? Step) : Expr(Pos);
sealed record CallExpr(int Pos, Expr Callee, List<Expr> Args, List<(string Name, Expr Value)> Kwargs) : Expr(Pos);
sealed record FilterExpr(int Pos, Expr? Value, string Name, List<Expr> Args, List<(string Name, Expr Value)> Kwargs) : Expr(Pos);
sealed record TestExpr(int Pos, Expr Value, string Name, List<Expr> Args, bool Negated) : Expr(Pos);
sealed record UnaryExpr(int Pos, string Op, Expr Operand) : Expr(Pos);
sealed record BinaryExpr(int Pos, string Op, Expr Left, Expr Right) : Expr(Pos);
sealed record CompareExpr(int Pos, Expr First, List<(string Op, Expr Operand)> Rest) : Expr(Pos);
sealed record CondExpr(int Pos, Expr Test, Expr Then, Expr? Else) : Expr(Pos);
/// <summary><c>*value</c> (positional) or <c>**value</c> (keyword) unpacking in a call's arguments.</summary>
sealed record StarExpr(int Pos, Expr Value, bool Keywords) : Expr(Pos);
