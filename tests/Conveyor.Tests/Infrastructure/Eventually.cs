namespace Conveyor.Tests.Infrastructure;

/// <summary>Waits for work a test triggered, with a bound; never a fixed sleep.</summary>
public static class Eventually
{
    public static readonly TimeSpan DefaultTimeout = TimeSpan.FromSeconds(60);

    /// <summary>Re-runs <paramref name="assertion"/> until it passes or the time is up, then rethrows its last failure.</summary>
    public static async Task AssertAsync(Func<Task> assertion, TimeSpan? timeout = null)
    {
        var deadline = DateTime.UtcNow + (timeout ?? DefaultTimeout);
        var delay = TimeSpan.FromMilliseconds(50);
        while (true)
        {
            try
            {
                await assertion();
                return;
            }
            catch (Exception) when (DateTime.UtcNow < deadline)
            {
                await Task.Delay(delay);
                delay = TimeSpan.FromMilliseconds(Math.Min(delay.TotalMilliseconds * 2, 500));
            }
        }
    }

    /// <summary>
    /// As above; when the time is up, the failure also says what <paramref name="describe"/> reports,
    /// read once at the end (not on every try).
    /// </summary>
    public static async Task AssertAsync(Func<Task> assertion, Func<Task<string>> describe, TimeSpan? timeout = null)
    {
        try
        {
            await AssertAsync(assertion, timeout);
        }
        catch (Exception exception) when (exception is not OutOfMemoryException)
        {
            string state;
            try
            {
                state = await describe();
            }
            catch (Exception describeFailure) when (describeFailure is not OutOfMemoryException)
            {
                state = $"(could not describe the state: {describeFailure.Message})";
            }

            throw new Xunit.Sdk.XunitException($"{exception.Message}{Environment.NewLine}{state}", exception);
        }
    }

    public static Task AssertAsync(Action assertion, TimeSpan? timeout = null) =>
        AssertAsync(() => { assertion(); return Task.CompletedTask; }, timeout);
}
