using Microsoft.ML.Dpo.Distributed;

// Under an MPI launcher every rank runs this program; ranks other than 0 keep stderr but print nothing else.
if (DistributedWorld.RankFromEnvironment() != 0) Console.SetOut(TextWriter.Null);
int code = MlDpo.Commands.CliApp.Run(args);
if (DistributedWorld.IsActive)
{
    // Success: every rank finalizes MPI together. A failure seen by this rank ends the whole job instead of leaving the
    // other ranks waiting in a collective.
    if (code == 0) DistributedWorld.Current.Finish();
    else DistributedWorld.Current.Abort(code);
}
return code;
