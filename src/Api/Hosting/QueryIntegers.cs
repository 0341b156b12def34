using System.Globalization;

namespace Conveyor.Api.Hosting;

/// <summary>Optional whole-number query parameters (limits, waits): digits only, no sign, spaces or separators.</summary>
internal static class QueryIntegers
{
    /// <summary>
    /// True with <paramref name="value"/> = <paramref name="defaultValue"/> when the parameter is absent,
    /// or with its value when it is digits within <paramref name="min"/>..<paramref name="max"/>; false otherwise.
    /// </summary>
    public static bool TryRead(string? text, int defaultValue, int min, int max, out int value)
    {
        if (text is null)
        {
            value = defaultValue;
            return true;
        }

        return int.TryParse(text, NumberStyles.None, CultureInfo.InvariantCulture, out value) && value >= min && value <= max;
    }
}
