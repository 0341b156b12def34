namespace Conveyor.Tests.Faults;

/// <summary>
/// A fault scenario that stops a shared server (RabbitMQ, PostgreSQL) and so disturbs every other
/// test on the machine: it runs only when <c>CONVEYOR_FAULTS_DISRUPTIVE=1</c>
/// (<c>bench/run.sh faults-disruptive</c> sets it, with private servers).
/// </summary>
public sealed class DisruptiveFactAttribute : FactAttribute
{
    public DisruptiveFactAttribute()
    {
        if (Environment.GetEnvironmentVariable("CONVEYOR_FAULTS_DISRUPTIVE") != "1")
        {
            Skip = "Stops a shared server: run with bench/run.sh faults-disruptive";
        }
    }
}
